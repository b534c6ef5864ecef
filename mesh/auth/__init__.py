"""Security at the gateway: users, tokens, roles, rate limits, revocation, audit, identity.

The gateway is the only way in. For every call it authenticates the bearer token
(:mod:`mesh.auth.tokens`), checks revocation (:mod:`mesh.auth.revocations`), checks the
permission the method declares in its proto (:mod:`mesh.auth.roles`), applies the caller's
rate limit with counters shared by every gateway (:mod:`mesh.auth.limiter`), forwards the
caller's identity sealed for nodes (:mod:`mesh.auth.identity`) and appends an audit record
(:mod:`mesh.auth.audit`). :class:`mesh.auth.guard.Guard` puts these together.
"""
