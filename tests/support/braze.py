"""Braze's own postback examples (braze-postbacks.json), as every test reads them."""

import json
from pathlib import Path
from typing import Any

BRAZE_EXAMPLES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "braze-postbacks.json").read_text()
)["examples"]
