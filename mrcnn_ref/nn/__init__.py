"""mrcnn_ref.nn"""
