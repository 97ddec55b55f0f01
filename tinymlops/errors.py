"""The errors TinyMLOps raises on purpose: one taxonomy, one base class, one module.

The rule: an error a user, an operator or a device may meet is a `TinyMLOpsError` defined
here, never beside the code that raises it.  Callers then catch one base class (the CLI
prints the message and exits non-zero; the operator turns a build's error into the Ready
condition's reason; a device reports the message as why it kept its model), and the
pipeline runner can rebuild a task's error from its class name alone (see
`tinymlops_pipelines/errors.py`).  Each message names the thing at fault (a field, a
file, a digest) so the reader knows what to fix.

    TinyMLOpsError
    ├─ what the user gave is wrong
    │  ├─ InvalidModelError
    │  ├─ InvalidDataError
    │  │  └─ CalibrationDataMissingError
    │  ├─ SpecError
    │  └─ ConfigError
    ├─ what a target cannot do
    │  ├─ UnsupportedOperatorError
    │  ├─ ToolchainMissingError
    │  ├─ FirmwareError
    │  └─ NoCompatibleVariantError
    ├─ what a device (or any reader of the store) refuses to run; a device keeps its model
    │  ├─ IntegrityError
    │  ├─ SignatureError
    │  ├─ DowngradeError
    │  ├─ ModelLoadError
    │  ├─ HealthCheckError
    │  ├─ LicenseError
    │  │  └─ LicenseRefusedError
    │  │     └─ MeterStateMissingError
    │  └─ WasmModuleError
    ├─ one inference that failed in a pre/post module; the device keeps serving
    │  └─ WasmCallError
    ├─ what a device sends that the gateway refuses
    │  └─ InvalidReportError
    │     ├─ BatchTooLargeError
    │     └─ DriftRefusedError
    ├─ what a device's usage export cannot be read as
    │  └─ ReceiptsError
    ├─ model watermarks (embedding and attribution)
    │  └─ WatermarkError
    │     ├─ WatermarkKeyError
    │     ├─ NotOnnxError
    │     ├─ ArchitectureMismatchError
    │     ├─ UnknownLicenseeError
    │     └─ RegistryConflictError
    ├─ federated training (tinymlops.federated)
    │  └─ FederatedError
    │     ├─ UntrainableModelError
    │     └─ NotEnoughClientsError
    ├─ on-device personalisation (tinymlops.personalise); the base keeps serving
    │  └─ PersonalisationError
    │     └─ NoLastLayerError
    ├─ a run that stopped
    │  ├─ PipelineRunError
    │  └─ DemoError
    └─ what is missing here or not reachable yet
       ├─ MissingExtraError (also an ImportError)
       ├─ PrometheusMissingError
       ├─ MetricsUnavailableError
       └─ DependencyNotReadyError
          └─ GatewayError

Two exceptions live elsewhere on purpose, because they are not domain errors:

- `tinymlops.stack.emulator.errors.ApiError` is the emulated Kubernetes API server's
  `Status` (HTTP code, reason, causes): a wire type its request handler renders, which
  the clients see as the API server's answer, never as a Python class.
- `tinymlops.commands.outputs.OutputRefused` is a `click.ClickException`: the command
  line refusing to overwrite a user's file, which click prints; this module, the bottom
  layer of the core (see `.importlinter`), imports nothing, click included.
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
    """A resource spec (or what a command was asked to build) is valid for the schema but makes no sense;
    the message names the field."""


class ConfigError(TinyMLOpsError):
    """A setting of the operator (an environment variable or its option) is missing or malformed; the
    message names it.  Read once at start-up, so the operator fails before it talks to the cluster."""


class UnsupportedOperatorError(TinyMLOpsError):
    """A target cannot run the graph (an operator or precision it lacks); the message names it.

    The variant is reported as not built; the rest of the matrix still builds."""


class ToolchainMissingError(TinyMLOpsError):
    """The build machine lacks a tool a target needs (e.g. a cross linker); the message names the package.

    Like an unsupported operator, the variant is reported as not built and the rest still builds."""


class TuningUnavailableError(ToolchainMissingError):
    """MetaSchedule tuning was asked for (variants.tuning) but cannot run on this build machine (the variant is
    listed under not_built with the reason, rather than built untuned under a tuned variant's name)."""


class FirmwareError(TinyMLOpsError):
    """A microcontroller variant's firmware failed to build, or to run in the emulated board; the message
    names the step and what the compiler or the firmware said.

    Like a missing toolchain, the variant is reported as not built and the rest still builds."""


class NoCompatibleVariantError(TinyMLOpsError):
    """No accepted variant fits a device's hardware."""


class IntegrityError(TinyMLOpsError):
    """A digest does not match: the bytes are not what the signed menu promised."""


class SignatureError(TinyMLOpsError):
    """A signature is missing, malformed or made by a key we do not trust."""


class DowngradeError(TinyMLOpsError):
    """A menu's version is lower than the one already installed."""


class ExpiredError(TinyMLOpsError):
    """A signed plan or menu is past its `expires`: a replay of an old one, or a mirror that stopped updating.

    Never accepted as new; what the device already follows keeps serving (`tinymlops.freshness`)."""


class ModelLoadError(TinyMLOpsError):
    """The runtime could not load a variant's bytes (verified, so they are what the publisher built: a model
    this runtime cannot run); the previous model keeps serving."""


class HealthCheckError(TinyMLOpsError):
    """A loaded variant failed its health check; the previous model keeps serving."""


class PipelineRunError(TinyMLOpsError):
    """The variants pipeline failed for a reason that is not a domain error (a retry may help); the message
    quotes the run's output."""


class DemoError(TinyMLOpsError):
    """The demo could not complete; the message says which stage (or canary step) and why."""


class MissingExtraError(TinyMLOpsError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it.

    Also an ImportError: it is raised where a package is entered, in place of the import that would fail."""


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


class DriftRefusedError(InvalidReportError):
    """A report's drift histograms cannot be merged (wrong bins, impossible counts, another revision's menu);
    `reason` is the short name they are counted by (`tinymlops.drift.merge.REASONS`), the message names the field.
    The report's other fields still count: only its histograms are left out of every drift score."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LicenseError(TinyMLOpsError):
    """A licence token is refused: not PASETO v4.public, signed by another key than the pinned publisher's,
    expired or not yet valid, bound to another device's identity key or to another menu, or with a claim
    missing or malformed.  The message names the claim; whatever the device legitimately runs keeps running."""


class LicenseRefusedError(LicenseError):
    """The device's licence refuses an inference: its quota is used up, its validity is over, or it does not
    cover the menu the device runs.  The model stays loaded and everything else works; `agent infer` exits 5
    with this message (e.g. `quota exhausted: 10,000 of 10,000 inferences used; reconnect to refill`)."""


class MeterStateMissingError(LicenseRefusedError):
    """A device installed with a licence (its install record, active.json, holds the tokens) has lost its meter
    state (meter.json): it refuses to serve rather than serve unmetered.  Installing a licence again
    (`agent install DIR --state-dir S --license TOKEN`, or the gateway's next token) rebuilds the meter from the
    receipts and checkpoints on disk, counting a full reservation block as possibly served."""


class ReceiptsError(TinyMLOpsError):
    """A usage export, a checkpoint record or a metering state file cannot be read as one (truncated, not
    base64, wrong length or format); the message names the file and the field.  Tampering with readable
    records is not this error: reconciling names it as an anomaly."""


class WasmModuleError(TinyMLOpsError):
    """A WebAssembly pre/post module cannot be used: not a wasm binary, it imports something (the allowed set is
    empty), it lacks the ABI's `memory` or `process(i32) -> i32`, it needs more memory than the cap, or it fails
    the golden samples.  Refused before it serves; the previous model and its modules keep serving."""


class WasmCallError(TinyMLOpsError):
    """One call of a pre/post module failed: it trapped, ran out of fuel (a loop), or returned a wrong number of
    values.  That inference fails and is counted under `reason` ("trap", "fuel" or "outputs"); the module is
    instantiated afresh and the device keeps serving."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WatermarkError(TinyMLOpsError):
    """A licensee's watermark could not be embedded or a suspect model could not be checked; the message names
    the model, the licensee or the registry entry at fault (`tinymlops.watermark`)."""


class WatermarkKeyError(WatermarkError):
    """The owner's watermark key is unreadable or shorter than 32 bytes; the message names the file."""


class NotOnnxError(WatermarkError):
    """The model (or suspect) given to watermarking is not an ONNX model; the message names the file."""


class ArchitectureMismatchError(WatermarkError):
    """A suspect model does not have the architecture of any base model in the registry; the message names what
    differs (the number of weight layers, or a layer's operator or shape), so its weights cannot be read out."""


class UnknownLicenseeError(WatermarkError):
    """A licensee id is not in the watermark registry (or is not a valid id); the message names it."""


class RegistryConflictError(WatermarkError):
    """The watermark registry already holds a different record for the same licensee and base model; it is
    never overwritten (the model carrying the first watermark may be out there)."""


class FederatedError(TinyMLOpsError):
    """A federated training run could not start or finish (`tinymlops.federated`); the message names the
    training, the model or the field at fault.  Nothing is published from a run that raised it."""


class UntrainableModelError(FederatedError):
    """The model cannot be trained through the ONNX-to-torch path: the message names the operators
    onnx2torch cannot convert, or says that no weight became trainable.  Raised before any round starts."""


class NotEnoughClientsError(FederatedError):
    """Fewer devices took part than the training's minimum clients per round; the message says how many came
    and how many were needed."""


class UpdateWithdrawnError(FederatedError):
    """Under secure aggregation a device checks its own update before masking it (the server cannot): one that is
    non-finite or longer than maxUpdateNorm is withdrawn, the device leaves the round, and SecAgg+ completes the
    sum without it.  The message starts with `update withdrawn (<reason>)`, by which the server counts it."""


class PersonalisationError(TinyMLOpsError):
    """A device cannot personalise its model (`tinymlops.personalise`): the fleet's policy forbids it, or the
    installed variant has no last layer this agent can fit.  The signed base model keeps serving unchanged."""


class NoLastLayerError(PersonalisationError):
    """The installed variant's graph has no identifiable last layer (a Gemm, or a MatMul and an Add of constant
    weights, optionally followed by Softmax, ending at its scores output); the message names where the search
    stopped.  Personalisation is refused and the base keeps serving."""
