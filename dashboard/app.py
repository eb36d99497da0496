"""The bustrail dashboard: `bustrail dashboard` runs `streamlit run dashboard/app.py`.

Four pages over the audit trail in DATABASE_URL. The sidebar's time range and
auto-refresh switch are drawn here, once, so every page shares them.
"""

from __future__ import annotations

import streamlit as st

from dashboard import ui

st.set_page_config(page_title="bustrail", page_icon=":material/route:", layout="wide")

PAGES = [
    st.Page(
        "views/overview.py",
        title="Overview",
        icon=":material/monitoring:",
        url_path="overview",
        default=True,
    ),
    st.Page(
        "views/transactions.py",
        title="Transactions",
        icon=":material/receipt_long:",
        url_path="transactions",
    ),
    st.Page(
        "views/breaker.py",
        title="Circuit breaker",
        icon=":material/electrical_services:",
        url_path="breaker",
    ),
    st.Page(
        "views/debt.py",
        title="Silent failures / debt",
        icon=":material/bug_report:",
        url_path="debt",
    ),
]

page = st.navigation(PAGES)
ui.sidebar()
page.run()
