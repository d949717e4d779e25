"""Synthetic data: the built-in demo dataset (FungiTastic-format metadata and drawn fungi) and predictions tables.

No download can be relied on, so the demo ships its own data in the real layout::

    <root>/metadata/FungiTastic/FungiTastic-{Train,ClosedSet-Val,ClosedSet-Test}.csv
    <root>/FungiTastic/{train,val,test}/<size>p/<imgIdx>-<observationID>.JPG

The taxonomy is real (:data:`amanita.demo.taxonomy.SPECIES`: 78 names, 77 accepted species in five phyla, with
*Amanita phalloides*, its look-alikes, a synonym pair and a true-to-life ``poisonous`` flag);
the observations are invented, with long-tailed counts; the columns nothing reads get simple
values (one place); habitat, substrate and month follow each species' ecology with
field noise (out-of-season finds, habitats of another ecology, missing habitats).

Every image is drawn so that each rank adds its own visual trait, coarse ranks the largest:

=========  ==========================================================================
phylum     background colour (the whole upper part of the picture)
class      ground band: colour and texture (moss, litter, wood grain, grass, gravel)
order      body plan (cap and stem, bracket, cup, coral, ...) and its stem/host colour
family     hue of the fruit body (siblings in an order are spread around the hue circle)
genus      surface pattern (spots, stripes, rings, scales, net, ...) and its colour
species    shade of the body, pattern density and element size, a small coloured mark
=========  ==========================================================================

Traits come from the lineage alone (siblings are spread evenly over each trait), so species
of a genus share the genus traits, and two synonymous names draw the same pictures. Pose,
scale, lighting, clutter and noise vary per image. The plan (:func:`amanita.demo.metadata.plan_dataset`)
is separate from the drawing (:func:`amanita.demo.drawing.draw_image`), and every image is seeded
from ``(seed, imgIdx)``, so the output is byte-identical for a seed whatever the number of worker
processes.

Modules: :mod:`~amanita.demo.taxonomy` (the table of names), :mod:`~amanita.demo.drawing` (traits
and pictures), :mod:`~amanita.demo.metadata` (the CSV rows), :mod:`~amanita.demo.dataset` (writing
it all, ``create_synthetic_dataset.py``), :mod:`~amanita.demo.synthetic_predictions` (synthetic predictions
tables for tests and benchmarks).
"""
