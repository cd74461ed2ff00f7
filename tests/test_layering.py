"""The module layering of strom-broker (scripts/check-layers.py): no module uses one of a layer
above it and no two modules import each other, so group, metadata (the controller) and metrics
never reach shard, and shard never reaches the Kafka handlers or the runtime."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check-layers.py"


def check(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True,
                          text=True, timeout=60)


def copy_src(tmp_path: Path) -> Path:
    """A copy of broker/src to break on purpose."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "broker" / "src", src)
    return src


def test_broker_layering_holds():
    r = check(REPO / "broker" / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "layering ok" in r.stdout


def test_the_readme_command_prints_the_layers():
    # As the README has it, from the checkout.
    r = subprocess.run(["python3", "scripts/check-layers.py", "--graph"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "python3 scripts/check-layers.py --graph" in (REPO / "README.md").read_text()
    lines = r.stdout.splitlines()
    assert lines[0].startswith("6 lib") and any(l.startswith("3 shard") for l in lines)
    assert lines[-1].startswith("layering ok")


def test_a_subsystem_that_reaches_shard_is_caught(tmp_path):
    src = copy_src(tmp_path)
    group = src / "group" / "mod.rs"
    group.write_text(group.read_text() + "\nfn _router() -> Option<crate::shard::Shard> { None }\n")
    r = check(src)
    assert r.returncode == 1, r.stdout
    assert "`group` (layer 2) uses `shard` (layer 3, above it)" in r.stdout
    assert "import cycle between group, shard" in r.stdout


def test_a_cycle_inside_one_layer_is_caught(tmp_path):
    src = copy_src(tmp_path)
    metrics = src / "metrics" / "mod.rs"
    metrics.write_text(metrics.read_text() + "\nuse crate::mesh::MeshCounts as _Counts;\n")
    r = check(src)
    assert r.returncode == 1, r.stdout
    assert "import cycle between mesh, metrics" in r.stdout


def test_test_code_is_not_counted(tmp_path):
    src = copy_src(tmp_path)
    group = src / "group" / "mod.rs"
    group.write_text(group.read_text() + "\n#[cfg(test)]\nmod t {\n    use crate::shard::Shard;\n}\n")
    tests = src / "group" / "store" / "tests.rs"
    tests.write_text(tests.read_text() + "\nuse crate::shard::Shard as _S;\n")
    assert check(src).returncode == 0
