"""Training and few-step distillation of PiD (build-time; the runtime never imports this)."""
