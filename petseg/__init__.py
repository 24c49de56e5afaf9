"""petseg: Oxford-IIIT Pet trimap segmentation with Lightning + Hydra."""
