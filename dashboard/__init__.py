"""The Streamlit dashboard: ``bustrail dashboard`` runs ``dashboard/app.py``.

``queries`` (SQL in ``sql/*.sql``, no Streamlit), ``rollup`` (how PostgreSQL's hourly
rollup and percentile ranks are read), ``timeline`` and ``charts`` are plain functions;
``ui`` and ``views/`` are the Streamlit layer. It reads ``bus`` and ``analysis``; nothing
imports it.
"""
