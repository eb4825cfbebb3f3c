"""The review web page: server-rendered (Jinja templates, no JavaScript), for people with a review or admin key.

    /review/login            sign in with an API key (session cookie; see `api.review.session`)
    /review/                 flagged jobs with thumbnails, scores against thresholds, filters, summary
    /review/jobs/<id>        the image, vanilla and aligned answers side by side, the alignment trace,
                             verdict buttons and the verdict history
    /review/jobs/<id>/image  the image (or a placeholder once purged), for the reviewer's tenant only
"""

from __future__ import annotations

from api.review.views import bp

__all__ = ["bp"]
