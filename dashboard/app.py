"""agegender dashboard: the entry point routes and draws the shared checkpoint picker."""

import streamlit as st

from dashboard import ui

st.set_page_config(page_title="agegender", page_icon=":material/face:", layout="wide")
page = st.navigation([
    st.Page("pages/predict.py", title="Predict & explain", icon=":material/center_focus_strong:", default=True),
    st.Page("pages/checkpoints.py", title="Checkpoints", icon=":material/inventory_2:"),
])
ui.sidebar()
page.run()
