"""The launch files: Ray's own validation of the cluster config, and the shell scripts' syntax."""

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "launch" / "slurm"
SCRIPTS = sorted([REPO / "launch" / "submit.sh", *SLURM.glob("*.sbatch"), *SLURM.glob("*.sh")])


def test_ray_cluster_yaml_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert any("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_wrkers"] = 1
    with pytest.raises(Exception, match="min_wrkers"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (.ci/run installs it)")
    result = subprocess.run(["shellcheck", "--external-sources", str(script)], check=False, cwd=REPO,
                            capture_output=True, text=True)  # the sbatch scripts source launch/slurm/nodes.sh from the repo root
    assert result.returncode == 0, result.stdout


def test_submit_script_refuses_a_missing_config() -> None:
    result = subprocess.run([str(REPO / "launch" / "submit.sh"), "no/such.yaml"], check=False, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "config file not found" in result.stderr
