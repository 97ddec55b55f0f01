/* `post`: class scores -> the top K classes with their probabilities.
 *
 * Input: n class scores.  When they already are a probability distribution
 * (each in 0..1, summing to 1 within 1e-3, as the digits model's
 * `probabilities` output is) they are kept; otherwise (logits) softmax turns
 * them into one.  Output layout, m = 2 * min(K, n) float32 values, best first:
 *     [class_0, probability_0, class_1, probability_1, ...]
 * class indices are exact in float32 (n < 2^24).  Ties keep the lower class
 * first.  Returns -1 when n is not 1..IO_FLOATS. */
#include "abi.h"

#define K 3

/* exp(x) without libc: x = k*ln2 + r with |r| <= ln2/2, e^r by its Taylor
 * series to r^7 (relative error < 2e-7 on that interval), 2^k by the exponent
 * bits.  Only called with x <= 0 (scores minus their maximum). */
static float exp_neg(float x) {
    if (x < -87.0f) return 0.0f;
    const float ln2 = 0.69314718f;
    int k = (int)(x / ln2 - 0.5f);
    float r = x - (float)k * ln2;
    float term = 1.0f, sum = 1.0f;
    for (int i = 1; i <= 7; i++) {
        term *= r / (float)i;
        sum += term;
    }
    union { float f; unsigned u; } scale = { .u = (unsigned)(k + 127) << 23 };
    return sum * scale.f;
}

static int is_distribution(const float *p, int n) {
    float total = 0.0f;
    for (int i = 0; i < n; i++) {
        if (!(p[i] >= 0.0f && p[i] <= 1.0f)) return 0;
        total += p[i];
    }
    return total > 0.999f && total < 1.001f;
}

static float probs[IO_FLOATS];

EXPORT("process") int process(int n) {
    if (n < 1 || n > IO_FLOATS) return -1;
    if (is_distribution(io, n)) {
        for (int i = 0; i < n; i++) probs[i] = io[i];
    } else {
        float top = io[0], total = 0.0f;
        for (int i = 1; i < n; i++) top = io[i] > top ? io[i] : top;
        for (int i = 0; i < n; i++) total += (probs[i] = exp_neg(io[i] - top));
        for (int i = 0; i < n; i++) probs[i] /= total;
    }
    int k = n < K ? n : K;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (probs[i] >= 0.0f && (best < 0 || probs[i] > probs[best])) best = i;
        io[2 * j] = (float)best;
        io[2 * j + 1] = probs[best];
        probs[best] = -1.0f; /* taken */
    }
    return 2 * k;
}
