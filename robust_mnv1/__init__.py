"""robust-mnv1: are lighter MobileNet V1 models easier to fool, and does adversarial fine-tuning fix it?"""

__version__ = "0.1.0"
