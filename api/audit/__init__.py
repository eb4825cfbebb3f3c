"""Audit of flagged jobs: query and response schemas, record documents, streaming export, job images.

The routes are `api.routes.audit` (JSON API) and `api.review` (the reviewers' web page); both read
through `eta.store.repository.audit`.
"""
