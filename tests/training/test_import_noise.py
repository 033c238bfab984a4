"""A command's output starts with its own lines: megatron-core's import-time notices about missing
Transformer Engine/Apex (and torch's about a missing CUDA runtime) are not shown without an NVIDIA driver."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"), reason="an NVIDIA driver is present: notices stay")
def test_entry_point_help_has_no_import_notices():
    result = subprocess.run([sys.executable, "-m", "megatron_ixt.pretrain", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO, PYTHONWARNINGS="default"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "Transformer Engine and Apex" not in result.stderr
    assert "No CUDA runtime" not in result.stderr
    # the notices exist on this megatron-core: importing it without our package shows them
    bare = subprocess.run([sys.executable, "-W", "default", "-c", "import megatron.core.optimizer"],
                          capture_output=True, text=True, timeout=300)
    assert "Transformer Engine and Apex are not installed" in bare.stderr
