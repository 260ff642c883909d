"""agegender dashboard: the entry point routes and draws the shared checkpoint picker."""

import streamlit as st

from dashboard import state, ui

# an emoji icon becomes an inline SVG; a ":material/...:" page icon makes the browser fetch the favicon from
# fonts.gstatic.com on every load, and a face-review tool makes no outside request (the browser test checks)
st.set_page_config(page_title="agegender", page_icon="🙂", layout="wide")
state.sidebar()
page = st.navigation([
    st.Page("pages/predict.py", title="Predict & explain", icon=":material/center_focus_strong:", default=True),
    st.Page("pages/bias.py", title="Bias report", icon=":material/balance:"),
    st.Page("pages/gender.py", title="Gender threshold", icon=":material/tune:"),
    st.Page("pages/compare.py", title="Compare checkpoints", icon=":material/compare:"),
    st.Page("pages/explorer.py", title="Error explorer", icon=":material/travel_explore:"),
    st.Page("pages/embedding.py", title="Embedding map", icon=":material/scatter_plot:"),
    st.Page("pages/robustness.py", title="Robustness", icon=":material/blur_on:"),
    st.Page("pages/evalsets.py", title="Evaluation sets", icon=":material/dataset:"),
    st.Page("pages/training.py", title="Training", icon=":material/show_chart:"),
    st.Page("pages/checkpoints.py", title="Checkpoints", icon=":material/inventory_2:"),
])
ui.run_page(page)
