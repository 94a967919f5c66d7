"""mrcnn_ref.model"""
