"""SR-Net registration: network, spatial transformer, losses, and the one place where the affine step
and the dense field are composed."""
