"""How stage processes are started: local (threads in this process), torchrun, ray."""
