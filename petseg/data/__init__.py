"""Oxford-IIIT Pet trimaps: reader, transforms, LightningDataModule and synthetic data."""
