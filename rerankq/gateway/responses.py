"""The gateway's JSON responses: safe to send whatever a request held.

A request may carry text Python holds but UTF-8 cannot encode (a lone surrogate from a ``\\ud800``
escape). Echoed back with Starlette's default (``ensure_ascii=False``, then UTF-8) it fails after
the work is done: a 500 and a reset connection. Escaping every non-ASCII character makes the body
ASCII by construction, so nothing a client sent can break its answer, and JSON clients read the
same text either way.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
