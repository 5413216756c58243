"""Object detection: boxes, the COCO and YOLO file formats, and an offline synthetic data set."""
