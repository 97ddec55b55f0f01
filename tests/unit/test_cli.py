"""The CLI outside `variants`: what outputs may replace, help that matches the options, one-line errors."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinymlops.cli import main
from tinymlops.commands.operator_cmd import KUBECONFIG_ENV, LIVENESS_DEFAULT, SETTINGS, name_flags
from tinymlops.commands.outputs import STAGING_PREFIX, check_output_files, directory_verdict, install_entries
from tinymlops.freshness import CLOCK_SKEW_S

OURS = ("menu.json", "menu.sig", "blobs", "keys")


def test_directory_verdicts() -> None:
    menu = "menu.json"
    assert directory_verdict([], OURS, None, force=False) is None
    assert directory_verdict([menu, "blobs", "keys"], OURS, menu, force=False) is None
    assert directory_verdict([menu, f"{STAGING_PREFIX}x1"], OURS, menu, force=False) is None
    refused = directory_verdict([menu, "data.npz", "model.onnx"], OURS, menu, force=False)
    assert refused is not None and "in the way: data.npz, model.onnx" in refused and "--force" in refused
    assert directory_verdict([menu, "data.npz", "model.onnx"], OURS, menu, force=True) is None
    assert directory_verdict(["data.npz", "model.onnx"], OURS, None, force=True) is None
    # A user's own keys/ or menu.json (no variant menu marks the directory as ours) stays, even with --force.
    for present in (["keys"], [menu, "keys", "notes.txt"]):
        for force in (False, True):
            kept = directory_verdict(present, OURS, None, force=force)
            assert kept is not None and "there would be replaced" in kept
    many = directory_verdict([f"f{i}" for i in range(9)], OURS, None, force=False)
    assert many is not None and "and 3 more" in many


def test_a_menu_json_that_is_not_a_variant_menu_is_not_ours(tmp_path: Path) -> None:
    from tinymlops.commands.outputs import OutputRefused, check_output_dir
    from tinymlops.commands.variants import VARIANT_DIR_ENTRIES, is_variant_menu

    (tmp_path / "menu.json").write_text('{"lunch": "soup"}')
    with pytest.raises(OutputRefused, match="menu.json there would be replaced"):
        check_output_dir(tmp_path, VARIANT_DIR_ENTRIES, "menu.json", force=True, option="--out",
                         marker_is_ours=is_variant_menu)
    (tmp_path / "menu.json").write_text('{"kind": "VariantMenu"}')
    check_output_dir(tmp_path, VARIANT_DIR_ENTRIES, "menu.json", force=False, option="--out",
                     marker_is_ours=is_variant_menu)


def test_install_replaces_ours_and_keeps_the_rest(tmp_path: Path) -> None:
    out, staging = tmp_path / "out", tmp_path / "staging"
    (out / "blobs").mkdir(parents=True)
    (out / "blobs" / "old").write_text("old")
    (out / "keys").mkdir()
    (out / "notes.txt").write_text("theirs")
    (staging / "blobs").mkdir(parents=True)
    (staging / "blobs" / "new").write_text("new")
    (staging / "menu.json").write_text("{}")
    install_entries(staging, out, OURS, last=("menu.json",))
    assert sorted(p.name for p in out.iterdir()) == ["blobs", "menu.json", "notes.txt"]
    assert [p.name for p in (out / "blobs").iterdir()] == ["new"] and not list(staging.iterdir())


def test_files_are_replaced_only_when_ours_or_forced(tmp_path: Path) -> None:
    theirs = tmp_path / "report.json"
    theirs.write_text("{}")
    with pytest.raises(Exception, match=r"--report: .*report.json exists \(pass --force"):
        check_output_files([theirs], force=False, option="--report")
    check_output_files([theirs], force=True, option="--report")
    check_output_files([theirs], force=False, option="--report", ours=lambda _: True)
    check_output_files([tmp_path / "absent"], force=False, option="--report")


def test_keys_generate_and_device_never_replace_either_half(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "signing-key.pub.pem").write_text("the key devices trust")
    refused = runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)])
    assert refused.exit_code == 1 and "signing-key.pub.pem exists (pass --force" in refused.output
    assert (tmp_path / "signing-key.pub.pem").read_text() == "the key devices trust"
    assert not (tmp_path / "signing-key.pem").exists()

    assert runner.invoke(main, ["keys", "device", "--out", str(tmp_path)]).exit_code == 0
    private = (tmp_path / "device-key.pem").read_bytes()
    again = runner.invoke(main, ["keys", "device", "--out", str(tmp_path)])
    assert again.exit_code == 1 and "device-key.pem exists" in again.output
    assert (tmp_path / "device-key.pem").read_bytes() == private
    rotated = runner.invoke(main, ["keys", "device", "--out", str(tmp_path), "--force"])
    assert rotated.exit_code == 0 and (tmp_path / "device-key.pem").read_bytes() != private


def test_keys_device_makes_an_identity_key_that_signs_and_never_replaces_one(tmp_path: Path) -> None:
    from tinymlops.signing import load_private_key, load_public_key, sign, verify

    runner = CliRunner()
    made = runner.invoke(main, ["keys", "device", "--out", str(tmp_path / "d")])
    assert made.exit_code == 0 and "identity.pem" in made.output
    private, public = tmp_path / "d" / "identity.pem", tmp_path / "d" / "identity.pub.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_private_key(private.read_bytes())
    verify(load_public_key(public.read_bytes()), b"report", sign(key, b"report"), what="report")
    # An identity the gateway knows is never replaced by accident: not even when only it is there.
    (tmp_path / "d" / "device-key.pem").unlink()
    (tmp_path / "d" / "device-key.pub.pem").unlink()
    again = runner.invoke(main, ["keys", "device", "--out", str(tmp_path / "d")])
    assert again.exit_code == 1 and "identity.pem exists" in again.output
    assert load_private_key(private.read_bytes()).public_key() == key.public_key()


def test_demo_refuses_to_write_its_report_over_another_file(tmp_path: Path) -> None:
    theirs = tmp_path / "results.json"
    theirs.write_text('{"mine": true}')
    # Refused before the stack starts: the test would take minutes otherwise.
    result = CliRunner().invoke(main, ["demo", "--report", str(theirs), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1 and f"--report: {theirs} exists" in result.output
    assert theirs.read_text() == '{"mine": true}' and not (tmp_path / "w").exists()


def test_a_previous_demo_report_is_recognised(tmp_path: Path) -> None:
    from tinymlops.commands.demo import REPORT_KEYS, is_demo_report

    report = tmp_path / "demo-report.json"
    report.write_text(json.dumps(dict.fromkeys(REPORT_KEYS, {})))
    assert is_demo_report(report)
    for text in ('{"model": {}}', "[1, 2]", "not json"):
        report.write_text(text)
        assert not is_demo_report(report)


@pytest.fixture
def operator_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A store and signing key for `operator run`, with the environment restored afterwards."""
    from tinymlops.signing import generate_key_pair

    for env, _ in SETTINGS.values():
        monkeypatch.delenv(env, raising=False)  # also undoes what `operator run` exports
    monkeypatch.delenv(KUBECONFIG_ENV, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    private, _ = generate_key_pair(tmp_path / "keys")
    return {"store": str(tmp_path / "store"), "key": str(private)}


def test_operator_run_without_a_kubeconfig_says_so_in_one_line(operator_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config"
    result = CliRunner().invoke(main, ["operator", "run", "--store", operator_env["store"],
                                       "--signing-key", operator_env["key"], "--kubeconfig", str(missing)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: kubeconfig {missing}: no such file (pass --kubeconfig "
                                                  "or set KUBECONFIG, or run in a cluster)"]
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\n")
    result = CliRunner().invoke(main, ["operator", "run", "--store", operator_env["store"],
                                       "--signing-key", operator_env["key"]], env={"KUBECONFIG": str(broken)})
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"kubeconfig {broken}: not usable" in result.output and "Traceback" not in result.output


def test_operator_settings_errors_name_the_flag(operator_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["operator", "run", "--store", operator_env["store"],
                                       "--signing-key", operator_env["key"], "--metrics-port", "http"])
    assert result.exit_code == 1 and "--metrics-port/TINYMLOPS_METRICS_PORT='http' is not a port" in result.output
    unset = CliRunner().invoke(main, ["operator", "run", "--store", operator_env["store"]])
    assert unset.exit_code == 1 and "--signing-key/TINYMLOPS_SIGNING_KEY is not set" in unset.output
    assert name_flags("TINYMLOPS_STORE is not set", {"--store": "TINYMLOPS_STORE"}) == \
        "--store/TINYMLOPS_STORE is not set"


def test_every_variable_the_operator_reads_is_an_option() -> None:
    config = Path(__file__).parents[2] / "operator" / "tinymlops_operator" / "config.py"
    read = set(re.findall(r"\"(TINYMLOPS_[A-Z_]+)\"", config.read_text()))
    assert read and read == {env for env, _ in SETTINGS.values()}
    help_text = CliRunner().invoke(main, ["operator", "run", "--help"]).output
    assert all(env in help_text for env in read | {KUBECONFIG_ENV})


def test_operator_liveness_and_gateway_ports_differ() -> None:
    from tinymlops.commands.gateway import run as gateway_run

    port = next(p.default for p in gateway_run.params if p.name == "port")
    assert f":{port}/" not in LIVENESS_DEFAULT


def test_gateway_store_is_an_option_with_its_variable(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "TINYMLOPS_STORE" in runner.invoke(main, ["gateway", "run", "--help"]).output
    a_file = tmp_path / "store"
    a_file.write_text("")
    result = runner.invoke(main, ["gateway", "run", "--store", str(a_file)])
    assert result.exit_code == 2 and "--store" in result.output and "is not a directory" in result.output


def test_help_matches_the_options() -> None:
    runner = CliRunner()
    simulate = runner.invoke(main, ["devices", "simulate", "--help"]).output
    assert "COUNT" not in simulate and "--devices" in simulate
    generate = runner.invoke(main, ["keys", "generate", "--help"]).output
    assert "into DIR" not in generate and "--out" in generate
    group = runner.invoke(main, ["keys", "--help"]).output
    assert "Ed25519" in group and "X25519" in group


def test_agent_status_as_json(tmp_path: Path) -> None:
    from tinymlops.agent.slots import ActiveSlot
    from tinymlops.commands.agent import status_document

    result = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(tmp_path), "--output", "json"])
    assert result.exit_code == 0 and json.loads(result.output) == {"active": None, "extraction": {"clients": []},
                                                           "license": None, "personalisation": None}
    active = ActiveSlot(slot="a", variant={"id": "int8-static", "sha256": "ab" * 32}, menu_version=3,
                        reason="most accurate runnable", switched_at=0.0, model=b"")
    assert status_document(active, now=10.0) == {"variant": "int8-static", "sha256": "ab" * 32, "menu_version": 3,
                                                 "slot": "a", "since": "1970-01-01T00:00:00Z",
                                                 "reason": "most accurate runnable", "menu_expires": None,
                                                 "stale_seconds": None}
    expiring = dataclasses.replace(active, menu_expires="1970-01-02T00:00:00.000Z")  # 86400 s
    assert status_document(expiring, now=86400.0 + CLOCK_SKEW_S)["stale_seconds"] is None  # within the tolerance
    assert status_document(expiring, now=90000.0)["stale_seconds"] == 3600.0


def test_cluster_up_does_not_replace_a_real_kubeconfig(tmp_path: Path) -> None:
    from tinymlops.commands.cluster import _is_emulator_kubeconfig
    from tinymlops.stack.kubeconfig import write_kubeconfig

    real = tmp_path / "config"
    real.write_text("apiVersion: v1\nkind: Config\ncontexts: [{name: prod, context: {cluster: prod}}]\n")
    result = CliRunner().invoke(main, ["cluster", "up", "--kubeconfig", str(real), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1 and f"--kubeconfig: {real} exists" in result.output
    assert "prod" in real.read_text() and not (tmp_path / "w").exists()
    assert not _is_emulator_kubeconfig(real)
    assert _is_emulator_kubeconfig(write_kubeconfig(tmp_path / "ours", "http://127.0.0.1:1"))
