"""agegender dashboard: the entry point only routes."""

import streamlit as st

st.set_page_config(page_title="agegender", page_icon=":material/face:", layout="wide")
st.navigation([
    st.Page("pages/checkpoints.py", title="Checkpoints", icon=":material/inventory_2:", default=True),
]).run()
