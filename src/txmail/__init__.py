"""txmail: ``txmail.core`` (the shared contract), the services ``txmail.ingress``,
``txmail.workers`` and ``txmail.fallback`` above it, and ``txmail.cli`` on top
(docs/architecture.md, "Packages and layers")."""
