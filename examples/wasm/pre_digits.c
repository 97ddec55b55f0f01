/* `pre` for the sample digits model: raw 8x8 pixel intensities 0..16 -> 0..1.
 *
 * The same scaling the model was trained with (tinymlops/model/digits.py
 * divides scikit-learn's digits by 16), so a device feeds raw sensor values
 * and gets the accuracy the factory measured.  Values outside 0..16 are
 * clamped: a saturated sensor must not push inputs outside what the model saw.
 * Returns n (one output per input), or -1 when n does not fit the I/O area. */
#include "abi.h"

#define MAX_INTENSITY 16.0f

EXPORT("process") int process(int n) {
    if (n < 0 || n > IO_FLOATS) return -1;
    for (int i = 0; i < n; i++) {
        float v = io[i] / MAX_INTENSITY;
        io[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    }
    return n;
}
