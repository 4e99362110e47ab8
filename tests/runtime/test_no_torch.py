"""The runtime never needs torch: import and search with torch made unimportable."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_retriever_works_with_torch_unimportable(tiny_bundle_dir: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from fashsdk import Retriever
        r = Retriever({str(tiny_bundle_dir)!r})
        rng = np.random.default_rng(0)
        r.add([(f"i{{n}}", rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)) for n in range(20)],
              {{f"i{{n}}": {{"colour": "Red"}} for n in range(20)}})
        hits = r.search("i3", change={{"colour": "Blue"}}, k=5)
        assert len(hits) == 5 and hits[0].attributes["colour"] == "Red"
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("OK", len(hits))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK 5"


def test_this_layer_runs_with_torch_unimportable() -> None:
    """The guard in tests/runtime/conftest.py is active: every test here would fail on a torch import."""
    import pytest

    with pytest.raises(ImportError):
        import torch  # noqa: F401
