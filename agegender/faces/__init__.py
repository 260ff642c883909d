"""Faces in photos: reading any image, MTCNN detection, alignment to the UTKFace chip geometry (detect), and
how each face was photographed: pose, size, sharpness (quality). The ground package: it imports nothing of ours."""
