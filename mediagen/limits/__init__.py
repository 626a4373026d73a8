"""What one caller may ask of the service at once: request rates and unfinished jobs per key
(`rates`), open event streams (`streams`), and request body sizes (`body`)."""
