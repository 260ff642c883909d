"""One photo's faces predicted and explained: every face's figures (predict) and its Grad-CAM per head (gradcam)."""
