"""The Streamlit dashboard: ``streamlit run dashboard/app.py``.

``app.py`` (entry, navigation) → ``views/`` (one file per page) → ``ui`` (page setup, shared
display) over ``queries/`` (catalog reads), ``mlflow_reads`` (MLflow client reads),
``serving_client`` (the OpenAI-compatible API) and ``actions`` (labels, promote, rollback: the
only writes). ``lineage_graph`` and ``graph`` draw the lineage; ``demo`` seeds a large fake history
for ``bench/screenshots.py``.
"""
