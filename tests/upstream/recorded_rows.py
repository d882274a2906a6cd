"""The SFT and DPO rows upstream MiniMind's own datasets made, as ``make_sft_rows`` recorded them: e119db8's
(``SFT_ROWS``, the minimind2 family) and d65ef2c's (``MINIMIND3_ROWS``)."""

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SFT_ROWS = json.loads((FOLDER / "sft_rows.json").read_text(encoding="utf-8"))
MINIMIND3_ROWS = json.loads((FOLDER / "sft_rows_minimind3.json").read_text(encoding="utf-8"))
