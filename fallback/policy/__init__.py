"""The executor's pure policy: what to do after an attempt (``verdict``), when to try
again (``retries``), when to stop calling a provider (``circuit``), and how far a
request got (``progress``). No I/O here: the executor feeds it and carries out what
it decides."""
