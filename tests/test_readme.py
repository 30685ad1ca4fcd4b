"""The README's Python example runs as written (with fewer steps)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, several processes or whole CLI runs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(block for block in blocks if "SSLTrainer(" in block)
    script = tmp_path / "example.py"
    script.write_text(example.replace("max_steps=60", "max_steps=2"))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random init" in result.stdout and "raw pixels" in result.stdout
    assert (tmp_path / "exported" / "python" / "README.md").is_file()
