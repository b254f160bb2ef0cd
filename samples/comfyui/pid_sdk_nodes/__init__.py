"""A ComfyUI node pack: copy or link this folder into ComfyUI/custom_nodes/ (pid-sdk installed in ComfyUI's Python)."""

from pid_sdk.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
