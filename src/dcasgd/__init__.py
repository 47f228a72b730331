"""dcasgd: delay-compensated asynchronous SGD on a parameter server (Zheng et al., ICML 2017)."""

__version__ = "0.1.0"
