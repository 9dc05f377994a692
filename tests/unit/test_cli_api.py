"""`nvctl api`: the declared operations as a person and a program read them."""
import json
import threading

from controller.client import cli
from controller.server.api import ApiServer


def _serve(core, state_dir):
    server = ApiServer(core, str(state_dir / "nvctl.sock"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_nvctl_api_lists_every_operation_with_kind_scope_and_arguments(core, tmp_path, capsys):
    _serve(core, tmp_path)
    assert cli.main(["api", "--state-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {ln.split()[0]: ln for ln in lines}
    assert by_name["tenant.create"].split()[1:3] == ["change", "tenant"]
    assert "yaml: string" in by_name["tenant.create"]
    assert by_name["tenant.show"].split()[1] == "read"
    assert by_name["host.resync"].split()[1:3] == ["change", "host"]
    assert "port.add" in by_name and 'ip: string = "auto"' in by_name["port.add"]


def test_nvctl_api_one_operation_in_full_and_as_json(core, tmp_path, capsys):
    _serve(core, tmp_path)
    assert cli.main(["api", "port.migrate", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("port.migrate") and "to: string" in out and len(out.splitlines()) >= 2
    assert cli.main(["api", "--json", "--state-dir", str(tmp_path)]) == 0
    table = json.loads(capsys.readouterr().out)
    migrate = next(o for o in table if o["name"] == "port.migrate")
    assert migrate["kind"] == "change" and migrate["scope"] == {"kind": "tenant", "arg": "tenant"}
    assert set(migrate["args"]) == {"tenant", "port", "to", "prepare", "bandwidth_mbps"}


def test_nvctl_api_names_an_unknown_operation(core, tmp_path, capsys):
    _serve(core, tmp_path)
    assert cli.main(["api", "tenant.explode", "--state-dir", str(tmp_path)]) == 1
    assert "no operation 'tenant.explode'" in capsys.readouterr().err
