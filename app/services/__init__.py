"""One small service per capability, each given only what it needs (built and wired in
:mod:`app.container`); a router calls one of them:

- :mod:`~app.services.embedding`: the model (embeddings, keypoints) behind the batcher;
- :mod:`~app.services.references`: storing, reading, listing and deleting references, elements;
- :mod:`~app.services.search`: neighbours, the element vote, the open set and anomaly scores;
- :mod:`~app.services.verification`: is this session element X?;
- :mod:`~app.services.drift`: how far an element's sessions moved from its baseline;
- :mod:`~app.services.alignment`: signals aligned by their keypoints;
- :mod:`~app.services.status`: readiness, metrics and the manifest.
"""
