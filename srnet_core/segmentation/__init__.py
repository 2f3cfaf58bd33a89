"""Self-supervised segmentation maps: the FGSN feature network, its pretraining, multi-scale feature
extraction, and k-means with the gap statistic into one codebook per dataset."""
