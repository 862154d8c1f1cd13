"""Real servers on 127.0.0.1 for the remote tests (a fake Hub, moto's S3) and their fixtures."""
