"""`training.compile`'s caches kept where leantune keeps its others, so a second run pays little of the first's compile.

torch.compile on a CPU spent 350-560 s on its first SmolLM2 step here (bench/results/throughput.json). Inductor
already caches compiled FX graphs, AOTAutograd graphs and C++ kernels on disk, but by default under the system's
temporary folder (/tmp/torchinductor_<user>), which many machines clear at boot and containers never keep. Under
$LEANTUNE_HOME/inductor they live as long as the model cache beside them. A TORCHINDUCTOR_CACHE_DIR the user set
is left alone. What a second run saves is measured by bench/compile_cache.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..paths import leantune_home


def use_persistent_compile_cache() -> Path:
    """Point Inductor's on-disk caches at $LEANTUNE_HOME/inductor (unless set) and make sure they are on."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # torch writes its /tmp default into the variable the first time anything asks for the folder: that is not a
    # choice the user made
    if not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(leantune_home() / "inductor")

    inductor_config.fx_graph_cache = True  # the defaults today; set so a changed default does not silently drop them
    inductor_config.autotune_local_cache = True
    functorch_config.enable_autograd_cache = True
    path = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path
