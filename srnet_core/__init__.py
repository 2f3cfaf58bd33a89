"""srnet_core: the importable library behind the srnet Snakemake workflow.

Modules by concern (lower layers never import higher ones, nothing imports Snakemake):
  errors, atomic, coords            shared small pieces
  landmarks, datasets               landmark files and ANHIR/BIRL cover tables (no torch)
  slides, tissue, h5io              OpenSlide/libvips reading, tissue masks, HDF5 conventions
  demo, download                    the embedded demo dataset and the download stage
  evaluation                        rTRE and the per-tissue tables
"""

__version__ = "0.1.0"
