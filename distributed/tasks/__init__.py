"""The registered tasks: name -> (module, class). `distributed.task.get_task` imports one only when it is used."""

TASKS = {
    "comical": ("comical.distributed.tasks.comical", "ComicalTask"),  # paper 000: SNP-IDP pairs, resident
    "gemcont": ("comical.distributed.tasks.gemcont", "GemcontTask"),  # paper 001: genotypes vs images, streamed
    "toy": ("comical.distributed.tasks.toy", "ToyTask"),  # two noisy views of a Gaussian latent, streamed
    "heads": ("comical.distributed.tasks.heads", "HeadsTask"),
    # paper 002: brain-age pre-training, the per-fold transfer CNNs (streamed), the stage 2/3 networks (resident)
    "cgni-age": ("comical.distributed.tasks.cgni", "CgniAgeTask"),
    "cgni-cnn": ("comical.distributed.tasks.cgni", "CgniCnnTask"),
    "cgni-bank": ("comical.distributed.tasks.cgni", "CgniBankTask"),
    # paper 003: momentum contrast of T1 and T2 volumes, its single-modality counterparts, a reconstruction baseline
    "momentum-t1t2": ("comical.distributed.tasks.momentum", "MomentumTask"),
    "momentum-t1": ("comical.distributed.tasks.momentum", "MomentumT1Task"),
    "momentum-t2": ("comical.distributed.tasks.momentum", "MomentumT2Task"),
    "autoencoder-t1t2": ("comical.distributed.tasks.momentum", "AutoencoderTask"),  # paper 000: outcome and risk-score heads, resident
    # paper 001's simulation benchmark: rotated characters, four methods, resident
    "sim-gemcont": ("comical.distributed.tasks.rotation", "GemcontSimTask"),
    "sim-simclr": ("comical.distributed.tasks.rotation", "SimclrSimTask"),
    "sim-vae": ("comical.distributed.tasks.rotation", "VaeSimTask"),
    "sim-supervised": ("comical.distributed.tasks.rotation", "SupervisedSimTask"),
}
