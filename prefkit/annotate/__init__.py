"""``prefkit annotate``: a web page where people label pairs of a dataset, and the votes' storage.

``store.py``   the SQLite vote store (WAL, one row per decision) and the pair assignment
``images.py``  the PNG of a sample straight out of its shard, by key
``instructions.py``  the question and the guidelines (Markdown rendered safely) the page shows
``app.py``     the ASGI app (Starlette): the page, its JSON API, the images, the access token
``serve.py``   the stage: check the dataset, open the store, bind, serve with uvicorn
``static/``    the page: plain HTML, CSS and JavaScript, no build step

Export goes through ``prefkit label --source annotate`` (the human-label import path,
:mod:`prefkit.importers`), so annotated and imported human labels are written by the same code.
"""
