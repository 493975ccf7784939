"""Config distribution: per-proxy long-poll watches, ACK/NACK, status."""
