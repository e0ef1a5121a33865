"""Where the weights came from travels with the deployment: load -> export report -> repository
configs -> the real server -> the client, which warns once per server when a network is untrained.

Expected hashes are computed here with ``hashlib`` from the weights files themselves. One server
(module fixture) serves a repository exported with the trained blending and harmonization files of
``weights/`` and an untrained MODNet (no published checkpoint in the test environment), so a
warning must name matting and only matting; the session's all-untrained repository
(``small_repository``) must name all three.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
import tritonclient.grpc
import tritonclient.http

from compositor.client.deployment import warn_untrained_once
from compositor.contract.provenance import provenance_from_config, untrained_networks
from compositor.client.remote import CompositorClient
from compositor.export.layout import read_report
from compositor.export.exporter import export_all
from compositor.networks.defaults import default_weights
from compositor.networks.factory import PUBLISHED_MODNET_CHECKPOINT_FILE, load_networks
from compositor.networks.modnet import MODNet
from compositor.networks.modnet_checkpoint import save_modnet_checkpoint
from compositor.serving.configs import RepositoryOptions
from compositor.contract.provenance import PROVENANCE_PARAMETER
from compositor.serving.repository import generate_repository

RESOLUTION = (64, 64)
NETWORK_NAMES = ["matting", "blending", "harmonization"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config_record(repository: Path, model: str) -> dict:
    """The provenance JSON in ``<repository>/<model>/config.pbtxt``, read with a regular expression."""
    text = (repository / model / "config.pbtxt").read_text()
    match = re.search(r'key: "weights_provenance"\n  value \{\n    string_value: "(.*)"\n', text)
    assert match, f"{model}: no weights_provenance parameter"
    return json.loads(match.group(1).encode().decode("unicode_escape"))


# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory) -> Path:
    """Trained blending and harmonization from weights/, untrained matting, exported at 64x64."""
    networks = load_networks(
        blending_checkpoint=default_weights("blending"),
        harmonization_checkpoint=default_weights("harmonization"),
        trained_defaults=False,
    )
    out = tmp_path_factory.mktemp("trained_export")
    export_all(out, networks, resolution=RESOLUTION)
    return out


@pytest.fixture(scope="module")
def trained_repository(trained_export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained_repository")
    generate_repository(out, RepositoryOptions(resolution=RESOLUTION), export_dir=trained_export)
    return out


@pytest.fixture(scope="module")
def trained_server(trained_repository, triton_servers):
    server = triton_servers.start(trained_repository)
    yield server
    server.stop()


def fetch_configs(server, protocol: str) -> dict[str, dict]:
    """Every network's config as tritonclient gives it (gRPC: ``{"config": ...}``; HTTP: the config)."""
    if protocol == "grpc":
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
        return {name: client.get_model_config(name, as_json=True) for name in [*NETWORK_NAMES, "preprocess"]}
    client = tritonclient.http.InferenceServerClient(server.http_url)
    return {name: client.get_model_config(name) for name in [*NETWORK_NAMES, "preprocess"]}


# --- Loading and export -----------------------------------------------------------------------------


def test_loading_records_kind_file_and_hash_of_each_networks_weights(tmp_path):
    checkpoint = save_modnet_checkpoint(MODNet().eval(), tmp_path / PUBLISHED_MODNET_CHECKPOINT_FILE)
    networks = load_networks(modnet_checkpoint=checkpoint, blending_checkpoint=default_weights("blending"),
                             trained_defaults=False)
    matting, blending, harmonization = (networks.provenance[name] for name in NETWORK_NAMES)
    assert matting["kind"] == "published_checkpoint"
    assert (matting["file"], matting["sha256"]) == (PUBLISHED_MODNET_CHECKPOINT_FILE, sha256(checkpoint))
    assert "the published MODNet checkpoint" in matting["note"]
    assert (blending["kind"], blending["file"], blending["sha256"]) == (
        "trained", "blending.safetensors", sha256(default_weights("blending")))
    assert blending["note"].startswith("trained by compositor train"), "the note is the file's own provenance line"
    assert (harmonization["kind"], harmonization["file"], harmonization["sha256"]) == ("untrained", None, None)


def test_a_modnet_checkpoint_under_another_name_is_not_called_the_published_one(tmp_path):
    checkpoint = save_modnet_checkpoint(MODNet().eval(), tmp_path / "my_modnet.ckpt")
    record = load_networks(modnet_checkpoint=checkpoint, trained_defaults=False).provenance["matting"]
    assert record["kind"] == "published_checkpoint" and record["file"] == "my_modnet.ckpt"
    assert "a MODNet checkpoint in the published format" in record["note"]


def test_the_export_report_carries_each_networks_provenance(trained_export, small_export):
    weights = read_report(trained_export)["weights"]
    assert weights["provenance"]["matting"]["kind"] == "untrained"
    for name in ("blending", "harmonization"):
        assert weights["provenance"][name]["kind"] == "trained"
        assert weights["provenance"][name]["sha256"] == sha256(default_weights(name))
    untrained = read_report(small_export.directory)["weights"]["provenance"]
    assert [untrained[name]["kind"] for name in NETWORK_NAMES] == ["untrained"] * 3


def test_the_export_summary_names_each_networks_weights(trained_export):
    from compositor.cli.export import summary

    text = summary(read_report(trained_export), trained_export)
    assert "weights: matting untrained; " in text
    assert f"harmonization trained (harmonization.safetensors, sha256 {sha256(default_weights('harmonization'))[:12]})" in text


# --- Repository -------------------------------------------------------------------------------------


def test_the_repository_puts_the_exports_records_in_the_network_configs_and_provenance_md(trained_repository):
    assert config_record(trained_repository, "matting")["kind"] == "untrained"
    for name in ("blending", "harmonization"):
        record = config_record(trained_repository, name)
        assert (record["kind"], record["file"], record["sha256"]) == ("trained", f"{name}.safetensors", sha256(default_weights(name)))
    table = (trained_repository / "PROVENANCE.md").read_text()
    assert f"| blending | trained | blending.safetensors | {sha256(default_weights('blending'))} |" in table
    assert "| matting | untrained | - | - |" in table


def test_a_repository_generated_without_an_export_records_unknown_weights(tmp_path):
    generate_repository(tmp_path / "repo", RepositoryOptions(), configs_only=True)
    for name in NETWORK_NAMES:
        record = config_record(tmp_path / "repo", name)
        assert (record["kind"], record["file"], record["sha256"]) == ("unknown", None, None)
        assert "without an export" in record["note"]


def test_the_committed_repository_says_its_weights_are_unknown():
    committed = Path(__file__).resolve().parents[1] / "model_repository"
    assert [config_record(committed, name)["kind"] for name in NETWORK_NAMES] == ["unknown"] * 3
    assert "| matting | unknown |" in (committed / "PROVENANCE.md").read_text()


def test_an_export_report_from_before_provenance_keeps_what_it_knows(trained_export, tmp_path):
    old = tmp_path / "old_export"
    old.mkdir()
    for name in NETWORK_NAMES:
        (old / f"{name}.onnx").write_bytes((trained_export / f"{name}.onnx").read_bytes())
    report = read_report(trained_export)
    report["weights"] = {"untrained": ["matting"], "sources": {"blending": "/somewhere/blending.safetensors"}}
    (old / "export_report.json").write_text(json.dumps(report))
    generate_repository(tmp_path / "repo", RepositoryOptions(resolution=RESOLUTION), export_dir=old)
    assert config_record(tmp_path / "repo", "matting")["kind"] == "untrained"
    blending = config_record(tmp_path / "repo", "blending")
    assert blending["kind"] == "unknown" and "/somewhere/blending.safetensors" in blending["note"]


def test_an_export_folder_without_a_report_records_unknown_weights_and_says_why(trained_export, tmp_path):
    bare = tmp_path / "bare_export"
    bare.mkdir()
    for name in NETWORK_NAMES:
        (bare / f"{name}.onnx").write_bytes((trained_export / f"{name}.onnx").read_bytes())
    generate_repository(tmp_path / "repo", RepositoryOptions(resolution=RESOLUTION), export_dir=bare)
    record = config_record(tmp_path / "repo", "harmonization")
    assert record["kind"] == "unknown" and "export_report.json" in record["note"]


def test_the_repository_command_prints_where_the_weights_came_from(trained_export, tmp_path, capsys):
    from compositor.cli import main

    assert main(["repository", "--onnx", str(trained_export), "--out", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert "matting untrained" in out
    assert f"blending trained (blending.safetensors, sha256 {sha256(default_weights('blending'))[:12]})" in out


# --- Reading it back from the real server -------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_client_reads_each_networks_provenance_from_the_servers_configs(trained_server, protocol):
    configs = fetch_configs(trained_server, protocol)
    records = {name: provenance_from_config(configs[name]) for name in NETWORK_NAMES}
    assert records["matting"] == {
        "kind": "untrained", "file": None, "sha256": None,
        "note": "seeded initialisation (seed 0): outputs show the plumbing, not the quality",
    }
    for name in ("blending", "harmonization"):
        assert (records[name]["kind"], records[name]["sha256"]) == ("trained", sha256(default_weights(name)))
    assert untrained_networks(records) == ["matting"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_model_config_without_the_parameter_reads_as_unknown(trained_server, protocol):
    config = fetch_configs(trained_server, protocol)["preprocess"]
    record = provenance_from_config(config)
    assert record["kind"] == "unknown" and PROVENANCE_PARAMETER in record["note"]
    assert untrained_networks({"preprocess": record}) == []


def test_an_unreadable_parameter_reads_as_unknown_with_the_reason():
    config = {"name": "matting", "parameters": {PROVENANCE_PARAMETER: {"string_value": "{not json"}}}
    record = provenance_from_config(config)
    assert record["kind"] == "unknown" and "unreadable" in record["note"]
    config["parameters"][PROVENANCE_PARAMETER]["string_value"] = json.dumps({"kind": "magic"})
    assert provenance_from_config(config)["kind"] == "unknown"


# --- The warning ----------------------------------------------------------------------------------------


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "compositor.client" and r.levelno == logging.WARNING]


def test_a_client_of_a_server_with_an_untrained_network_warns_once_naming_it(trained_server, caplog):
    caplog.set_level(logging.WARNING, logger="compositor.client")
    with CompositorClient(trained_server.grpc_url) as client:
        assert client.deployment.provenance["blending"]["sha256"] == sha256(default_weights("blending"))
    [message] = _warnings(caplog)
    assert trained_server.grpc_url in message and "UNTRAINED" in message
    assert re.search(r"weights for: matting\.", message), "only matting is untrained"
    assert "compositor export" in message, "the warning says what to do"
    with CompositorClient(trained_server.grpc_url) as again:
        assert again.deployment.provenance["matting"]["kind"] == "untrained"
    assert len(_warnings(caplog)) == 1, "a second client to the same server does not warn again"


def test_every_untrained_network_is_named_and_each_server_warns_once(own_server, caplog):
    caplog.set_level(logging.WARNING, logger="compositor.client")
    for _ in range(2):
        with CompositorClient(own_server.http_url, protocol="http") as client:
            client.deployment
    [message] = _warnings(caplog)
    assert "weights for: matting, blending, harmonization." in message and own_server.http_url in message


def test_warn_untrained_once_says_nothing_when_every_network_is_trained(caplog):
    caplog.set_level(logging.WARNING, logger="compositor.client")
    warn_untrained_once("trained.example:8001", [])
    warn_untrained_once("untrained.example:8001", ["blending"])
    warn_untrained_once("untrained.example:8001", ["blending"])
    assert len(_warnings(caplog)) == 1 and "untrained.example:8001" in _warnings(caplog)[0]


def test_a_record_has_every_field_in_order_and_a_known_kind():
    from compositor.contract.provenance import PROVENANCE_FIELDS, as_provenance_record, provenance_record

    record = provenance_record("trained", "blending.safetensors", "ab" * 32, "note")
    assert tuple(record) == PROVENANCE_FIELDS
    with pytest.raises(ValueError, match="must be one of trained, published"):
        provenance_record("borrowed")
    assert as_provenance_record({"kind": "untrained", "extra": 1}) == {"kind": "untrained", "file": None, "sha256": None, "note": None}
    assert as_provenance_record({"kind": "borrowed"}) is None and as_provenance_record("trained") is None
