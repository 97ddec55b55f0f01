"""The domain errors of TinyMLOps, one small taxonomy for every component.

Handlers translate these into Kubernetes conditions (`reason` = class name);
the CLI prints their message and exits non-zero.  Each message names the
thing at fault (a field, a file, a digest) so the user knows what to fix.
"""


class TinyMLOpsError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidModelError(TinyMLOpsError):
    """The source model is missing, unreadable or not a valid ONNX graph."""


class InvalidDataError(TinyMLOpsError):
    """A DATA.npz file lacks `x`, has the wrong dtype or does not match the model input."""


class CalibrationDataMissingError(InvalidDataError):
    """A calibrated variant (static int8) was asked for without data to calibrate it on.

    Calibrating on random inputs would lose quality that nothing measures, so the variant is
    reported as not built (the rest of the matrix still builds) unless synthetic data is asked for."""


class SpecError(TinyMLOpsError):
    """A resource spec is valid for the schema but makes no sense (names the field)."""


class UnsupportedOperatorError(TinyMLOpsError):
    """A target cannot run the graph (an operator or precision it lacks); the message names it.

    The variant is reported as not built; the rest of the matrix still builds."""


class ToolchainMissingError(TinyMLOpsError):
    """The build machine lacks a tool a target needs (e.g. a cross linker); the message names the package.

    Like an unsupported operator, the variant is reported as not built and the rest still builds."""


class IntegrityError(TinyMLOpsError):
    """A digest does not match: the bytes are not what the signed menu promised."""


class SignatureError(TinyMLOpsError):
    """A signature is missing, malformed or made by a key we do not trust."""


class DowngradeError(TinyMLOpsError):
    """A menu's version is lower than the one already installed."""


class NoCompatibleVariantError(TinyMLOpsError):
    """No accepted variant fits a device's hardware."""


class HealthCheckError(TinyMLOpsError):
    """A loaded variant failed its health check; the previous model keeps serving."""


class DependencyNotReadyError(TinyMLOpsError):
    """Something we depend on (gateway, pipeline backend) is not reachable yet; retry later."""


class MetricsUnavailableError(TinyMLOpsError):
    """The metrics backend (Prometheus) cannot be reached or answered with an error; the message names the URL.

    A rollout treats this as inconclusive: it pauses, it never promotes blindly."""


class PrometheusMissingError(TinyMLOpsError):
    """The `prometheus` server binary is not installed on this machine; the message says how to install it."""


class GatewayError(DependencyNotReadyError):
    """The gateway did not answer as expected (unreachable, 5xx): the device keeps serving, retries at its next poll."""


class InvalidReportError(TinyMLOpsError):
    """A device report (or the batch around it) breaks the report format; the message names the field."""


class BatchTooLargeError(InvalidReportError):
    """A batch holds more reports than one request may carry (HTTP 413)."""
