"""Studies that compare the HLT with offline reconstruction (``hltemu study``).

* :mod:`~hltemu.study.online_offline`: HLT jets against offline jets (reading, matching,
  response, path bits, turn-ons) on CMS NanoAOD or on hltemu's own outputs, read by
  :mod:`~hltemu.study.emulator_input` (HLT calorimeter jets at each JEC level against the
  offline ``pfjets``; the ``regressed_jets`` of stage ``jet_regression`` as one more level
  where the files have them); :mod:`~hltemu.study.threshold_width`: on hltemu outputs, the
  turn-on of a single-jet cut on corrected HLT jets against the same cut on every other HLT jet
  flavour at the threshold with the same p50 and at the one with the same generator-weighted
  accept rate; :mod:`~hltemu.study.fits`: the Gaussian-core and erf turn-on fits (and a turn-on's
  efficiency at a pT with its error); :mod:`~hltemu.study.online_offline_plots`: the figures;
  :mod:`~hltemu.study.command`: the ``hltemu study`` command group.
"""
