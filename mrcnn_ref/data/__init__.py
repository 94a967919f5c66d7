"""mrcnn_ref.data"""
