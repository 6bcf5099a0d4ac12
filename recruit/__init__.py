"""recruit: make transformers do less work per input.

Recruit only the neurons, modules, layers and KV-cache tokens that matter. The package holds a real
multilingual corpus (:mod:`recruit.data`), a dense baseline (:mod:`recruit.models.gpt`), one trainer
(:mod:`recruit.train`), one measurement harness (:mod:`recruit.measure`) and the report
(:mod:`recruit.report`); techniques plug into these.
"""

from recruit.errors import RecruitError

__version__ = "0.1.0"
__all__ = ["RecruitError", "__version__"]
