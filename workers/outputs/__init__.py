"""What a committed run is turned into for people and tools.

The HTML report (`report`) and the exports for review and training tools (`export`: COCO, CVAT,
Label Studio, YOLO).
"""
