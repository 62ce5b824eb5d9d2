"""Step parameters: names, types, defaults and help of jwst 3.0's calwebb_image3 steps.

The specifications are written in the configobj syntax the official pipeline uses, so a user of
``strun calwebb_image3`` finds the same names and defaults. Parameters that only image3-dask has
are listed under ``EXTRA_SPECS`` and say so in their help.
"""

# Official parameters (jwst 3.0), per step. Parameters of the official steps that concern other
# observing modes (TSO, IFU) or stpipe's file handling are left out.
OFFICIAL_SPECS: dict[str, str] = {
    "tweakreg": """
        save_catalogs = boolean(default=False)  # Write out catalogs?
        use_custom_catalogs = boolean(default=False)  # Use custom user-provided catalogs?
        catalog_format = string(default='ecsv')  # Catalog output file format
        catfile = string(default='')  # Name of the file with a list of custom user-provided catalogs
        starfinder = option('dao', 'iraf', 'segmentation', default='iraf')  # Star finder to use.
        snr_threshold = float(default=10.0)  # SNR threshold above the bkg for star finder
        kernel_fwhm = float(default=2.5)  # Gaussian kernel FWHM in pixels
        bkg_boxsize = integer(default=400)  # The background mesh box size in pixels.
        minsep_fwhm = float(default=0.0)  # Minimum separation between detected objects in FWHM
        sigma_radius = float(default=1.5)  # Truncation radius of the Gaussian kernel, units of sigma
        sharplo = float(default=0.5)  # The lower bound on sharpness for object detection.
        sharphi = float(default=2.0)  # The upper bound on sharpness for object detection.
        roundlo = float(default=0.0)  # The lower bound on roundness for object detection.
        roundhi = float(default=0.2)  # The upper bound on roundness for object detection.
        brightest = integer(default=200)  # Keep top ``brightest`` objects
        peakmax = float(default=None)  # Filter out objects with pixel values >= ``peakmax``
        npixels = integer(default=10)  # Minimum number of connected pixels
        connectivity = option(4, 8, default=8)  # The connectivity defining the neighborhood of a pixel
        nlevels = integer(default=32)  # Number of multi-thresholding levels for deblending
        contrast = float(default=0.001)  # Fraction of total source flux an object must have to be deblended
        multithresh_mode = option('exponential', 'linear', 'sinh', default='exponential')  # Multi-thresholding mode
        localbkg_width = integer(default=0)  # Width of rectangular annulus used to compute local background around each source
        apermask_method = option('correct', 'mask', 'none', default='correct')  # How to handle neighboring sources
        kron_params = float_list(min=2, max=3, default=None)  # Parameters defining Kron aperture
        deblend = boolean(default=True)  # deblend sources?
        enforce_user_order = boolean(default=False)  # Align images in user specified order?
        expand_refcat = boolean(default=False)  # Expand reference catalog with new sources?
        minobj = integer(default=15)  # Minimum number of objects acceptable for matching
        fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='rshift')  # Fitting geometry
        nclip = integer(min=0, default=3)  # Number of clipping iterations in fit
        sigma = float(min=0.0, default=3.0)  # Clipping limit in sigma units
        searchrad = float(default=2.0)  # The search radius in arcsec for a match
        use2dhist = boolean(default=True)  # Use 2d histogram to find initial offset?
        separation = float(default=1.0)  # Minimum object separation for xyxymatch in arcsec
        tolerance = float(default=0.7)  # Matching tolerance for xyxymatch in arcsec
        xoffset = float(default=0.0)  # Initial guess for X offset in arcsec
        yoffset = float(default=0.0)  # Initial guess for Y offset in arcsec
        abs_refcat = string(default='')  # Catalog file name or one of: "'GAIAREFCAT'", "'GAIADR3'", "'GAIADR2'", or "'GAIADR1'", or None, or ''
        save_abs_catalog = boolean(default=False)  # Write out used absolute astrometric reference catalog as a separate product
        abs_minobj = integer(default=15)  # Minimum number of objects acceptable for matching when performing absolute astrometry
        abs_fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='rshift')
        abs_nclip = integer(min=0, default=3)  # Number of clipping iterations in fit when performing absolute astrometry
        abs_sigma = float(min=0.0, default=3.0)  # Clipping limit in sigma units when performing absolute astrometry
        abs_searchrad = float(default=6.0)  # The search radius in arcsec for a match when performing absolute astrometry
        abs_use2dhist = boolean(default=True)  # Use 2D histogram to find initial offset when performing absolute astrometry? We encourage setting this parameter to True. Otherwise, xoffset and yoffset will be set to zero.
        abs_separation = float(default=1)  # Minimum object separation in arcsec when performing absolute astrometry
        abs_tolerance = float(default=0.7)  # Matching tolerance for xyxymatch in arcsec when performing absolute astrometry
        sip_approx = boolean(default=True)  # enables SIP approximation for imaging modes.
        sip_max_pix_error = float(default=0.01)  # max err for SIP fit, forward.
        sip_degree = integer(max=6, default=None)  # degree for forward SIP fit, None to use best fit.
        sip_max_inv_pix_error = float(default=0.01)  # max err for SIP fit, inverse.
        sip_inv_degree = integer(max=6, default=None)  # degree for inverse SIP fit, None to use best fit.
        sip_npoints = integer(default=12)  # number of points for SIP
        in_memory = boolean(default=True)  # If False, preserve memory using temporary files at expense of runtime
    """,
    "skymatch": """
        skymethod = option('local', 'global', 'match', 'global+match', 'user', default='match')  # sky computation method
        match_down = boolean(default=True)  # adjust sky to lowest measured value?
        subtract = boolean(default=False)  # subtract computed sky from image data?
        skylist = string(default=None)  # Filename pointing to list of (imagename skyval) pairs
        stepsize = integer(default=None)  # Max vertex separation
        skystat = option('median', 'midpt', 'mean', 'mode', default='mode')  # sky statistics
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE')  # "good" DQ bits
        lower = float(default=None)  # Lower limit of "good" pixel values
        upper = float(default=None)  # Upper limit of "good" pixel values
        nclip = integer(min=0, default=5)  # number of sky clipping iterations
        lsigma = float(min=0.0, default=4.0)  # Lower clipping limit, in sigma
        usigma = float(min=0.0, default=4.0)  # Upper clipping limit, in sigma
        binwidth = float(min=0.0, default=0.1)  # Bin width for 'mode' and 'midpt' `skystat`, in sigma
        in_memory = boolean(default=True)  # If False, preserve memory using temporary files
    """,
    "outlier_detection": """
        weight_type = option('ivm','exptime',default='ivm')  # Weighting of the single resamples
        pixfrac = float(min=0.0, max=1.0, default=1.0)  # Pixel shrinkage factor
        kernel = option('square','point','turbo',default='square')  # Flux distribution kernel
        fillval = string(default='NAN')  # Value of output pixels with no input
        maskpt = float(default=0.7)  # Fraction of the median weight below which single-resample pixels are ignored in the median
        snr = string(default='5.0 4.0')  # Signal-to-noise thresholds for outliers and their neighbours
        scale = string(default='1.2 0.7')  # Scale factors of the median derivative for outliers and their neighbours
        backg = float(default=0.0)  # Background level added to the blotted median
        kernel_size = string(default='7 7')  # Size of the box filter for resample_data=false
        threshold_percent = float(default=99.8)  # Percentile threshold for resample_data=false
        save_intermediate_results = boolean(default=False)  # Save the singles and the median (_outlier_i2d.fits, _median.fits)
        resample_data = boolean(default=True)  # Resample the exposures onto the output grid before taking the median
        good_bits = string(default="~DO_NOT_USE")  # DQ flags to allow
        in_memory = boolean(default=True)  # in_memory flag ignored if run within the pipeline; set at pipeline level instead
        pixmap_stepsize = float(default=1.0)  # Interpolation step size for pixel map; interpolation is used for stepsize > 1
        pixmap_order = integer(default=1)  # Spline order for pixel mapping, must be 1 or 3
    """,
    "resample": """
        pixfrac = float(min=0.0, max=1.0, default=1.0)  # Pixel shrinkage factor
        kernel = option('square','gaussian','point','turbo','lanczos2','lanczos3',default='square')  # Flux distribution kernel
        fillval = string(default='NAN')  # Output value for pixels with no weight or flux
        weight_type = option('ivm', 'exptime', None, default='ivm')  # Input image weighting type
        output_shape = int_list(min=2, max=2, default=None)  # [x, y] order
        crpix = float_list(min=2, max=2, default=None)  # 0-based image coordinates of the reference pixel
        crval = float_list(min=2, max=2, default=None)  # world coordinates of the reference pixel
        rotation = float(default=None)  # Output image Y-axis PA relative to North
        pixel_scale_ratio = float(default=1.0)  # Ratio of output to input pixel scale.
        pixel_scale = float(default=None)  # Absolute pixel scale in arcsec
        output_wcs = string(default='')  # Custom output WCS. Overrides other WCS parameters if provided.
        single = boolean(default=False)  # Resample each input to its own output grid
        in_memory = boolean(default=True)  # Keep images in memory
        enable_ctx = boolean(default=True)  # Compute and report the context array
        enable_err = boolean(default=True)  # Compute and report the err array
        report_var = boolean(default=True)  # Report the variance array
        propagate_dq = boolean(default=False)  # propagate DQ during resampling
        pixmap_stepsize = float(default=1.0)  # Interpolation step size for pixel map; interpolation is used for stepsize > 1
        pixmap_order = integer(default=1)  # Spline order for pixel mapping, must be 1 or 3
    """,
    "source_catalog": """
        aperture_ee1 = integer(default=30)  # aperture encircled energy 1
        aperture_ee2 = integer(default=50)  # aperture encircled energy 2
        aperture_ee3 = integer(default=70)  # aperture encircled energy 3
        ci1_star_threshold = float(default=2.0)  # CI 1 star threshold
        ci2_star_threshold = float(default=1.8)  # CI 2 star threshold
        starfinder = option('dao', 'iraf', 'segmentation', default='segmentation')  # Star finder to use.
        snr_threshold = float(default=3.0)  # SNR threshold above the bkg for star finder
        bkg_boxsize = integer(default=1000)  # The background mesh box size in pixels.
        kernel_fwhm = float(default=2.0)  # Gaussian kernel FWHM in pixels
        minsep_fwhm = float(default=0.0)  # Minimum separation between detected objects in FWHM
        sigma_radius = float(default=1.5)  # Truncation radius of the Gaussian kernel, units of sigma
        sharplo = float(default=0.5)  # The lower bound on sharpness for object detection.
        sharphi = float(default=2.0)  # The upper bound on sharpness for object detection.
        roundlo = float(default=0.0)  # The lower bound on roundness for object detection.
        roundhi = float(default=0.2)  # The upper bound on roundness for object detection.
        brightest = integer(default=200)  # Keep top ``brightest`` objects
        peakmax = float(default=None)  # Filter out objects with pixel values >= ``peakmax``
        npixels = integer(default=25)  # Minimum number of connected pixels
        connectivity = option(4, 8, default=8)  # The connectivity defining the neighborhood of a pixel
        nlevels = integer(default=32)  # Number of multi-thresholding levels for deblending
        contrast = float(default=0.001)  # Fraction of total source flux an object must have to be deblended
        multithresh_mode = option('exponential', 'linear', 'sinh', default='exponential')  # Multi-thresholding mode
        localbkg_width = integer(default=0)  # Width of rectangular annulus used to compute local background around each source
        apermask_method = option('correct', 'mask', 'none', default='correct')  # How to handle neighboring sources
        kron_params = float_list(min=2, max=3, default=None)  # Parameters defining Kron aperture
        deblend = boolean(default=True)  # deblend sources?
    """,
}

# Every step also has these (as stpipe steps do).
COMMON_SPEC = """
        skip = boolean(default=False)  # Skip this step
        save_results = boolean(default=True)  # Write this step's products
"""

# Parameters that exist only in image3-dask.
EXTRA_SPECS: dict[str, str] = {
    "tweakreg": """
        align_mode = option('auto', 'global', 'official', default='auto')  # [image3-dask] 'official' aligns every group to one reference group as jwst does; 'global' solves all groups together from every overlapping pair; 'auto' uses global when the groups do not all overlap one another
        abs_refcat_url = string(default='')  # [image3-dask] catalog service queried for abs_refcat = GAIADR3, GAIADR2, GAIADR1 or GAIAREFCAT (default: the ASTROMETRIC_CATALOG_URL environment variable, else https://gsss.stsci.edu/webservices)
""",
    "skymatch": "",
    "outlier_detection": """
        pixmap_max_error = float(min=0.0, default=0.01)  # [image3-dask] with pixmap_stepsize=1, pixel maps are interpolated from a 16-pixel grid when checked to be within this many output pixels of the exact WCS (else evaluated at every pixel); 0 evaluates the WCS at every pixel as jwst does
""",
    "resample": """
        pixmap_max_error = float(min=0.0, default=0.01)  # [image3-dask] with pixmap_stepsize=1, pixel maps are interpolated from a 16-pixel grid when checked to be within this many output pixels of the exact WCS (else evaluated at every pixel); 0 evaluates the WCS at every pixel as jwst does
        tile_shape = int_list(min=2, max=2, default=None)  # [image3-dask] output tile size [ny, nx]; chosen from worker memory when unset
        max_output_pixels = integer(default=400000000)  # [image3-dask] refuse output grids larger than this many pixels
""",
    "source_catalog": """
        override_apcorr = string(default=None)  # Aperture correction reference file (an ApcorrModel FITS file)
        override_abvegaoffset = string(default=None)  # AB-Vega offset reference file (an ABVegaOffsetModel ASDF file)
        tiled = option('auto', 'always', 'never', default='auto')  # [image3-dask] tiled detection and measurement; 'auto' when the mosaic is too big for one worker
""",
}

STEP_ORDER: tuple[str, ...] = (
    "tweakreg",
    "skymatch",
    "outlier_detection",
    "resample",
    "source_catalog",
)

# Allowed values of numeric parameters, where the specifications above do not state them: the
# ranges jwst documents or checks (jwst.source_catalog checks 0 < aperture_ee < 100), or that the
# algorithm needs (a scale of 0 or a negative FWHM has no meaning). Interval notation: "(0, inf)"
# is > 0, "[0, 1]" is 0 to 1 inclusive, "{1, 3}" one of the values; a list parameter's every
# value must be in it, or its values each in their own interval (a tuple). Every float parameter
# must also be finite (no nan or inf).
_FINDER_RANGES = {
    "snr_threshold": "(0, inf)",
    "kernel_fwhm": "(0, inf)",
    "bkg_boxsize": "[1, inf)",
    "minsep_fwhm": "[0, inf)",
    "sigma_radius": "(0, inf)",
    "brightest": "[1, inf)",
    "npixels": "[1, inf)",
    "nlevels": "[1, inf)",
    "contrast": "[0, 1]",
    "localbkg_width": "[0, inf)",
    "kron_params": "(0, inf)",
}
_PIXMAP_RANGES = {"pixmap_stepsize": "[1, inf)", "pixmap_order": "{1, 3}"}

RANGES: dict[str, dict[str, str]] = {
    "tweakreg": {
        **_FINDER_RANGES,
        "minobj": "[1, inf)",
        "sigma": "(0, inf)",
        "searchrad": "(0, inf)",
        "separation": "[0, inf)",
        "tolerance": "(0, inf)",
        "abs_minobj": "[1, inf)",
        "abs_sigma": "(0, inf)",
        "abs_searchrad": "(0, inf)",
        "abs_separation": "[0, inf)",
        "abs_tolerance": "(0, inf)",
        "sip_max_pix_error": "(0, inf)",
        "sip_degree": "[1, 6]",
        "sip_max_inv_pix_error": "(0, inf)",
        "sip_inv_degree": "[1, 6]",
        "sip_npoints": "[1, inf)",
    },
    "skymatch": {
        "stepsize": "[1, inf)",
        "lsigma": "(0, inf)",
        "usigma": "(0, inf)",
        "binwidth": "(0, inf)",
    },
    "outlier_detection": {
        **_PIXMAP_RANGES,
        "maskpt": "[0, 1]",
        "threshold_percent": "[0, 100]",
    },
    "resample": {
        **_PIXMAP_RANGES,
        "pixel_scale_ratio": "(0, inf)",
        "pixel_scale": "(0, inf)",
        "output_shape": "[2, inf)",
        "crval": ("[-360, 360]", "[-90, 90]"),
        "tile_shape": "[1, inf)",
        "max_output_pixels": "[1, inf)",
    },
    "source_catalog": {
        **_FINDER_RANGES,
        "aperture_ee1": "(0, 100)",
        "aperture_ee2": "(0, 100)",
        "aperture_ee3": "(0, 100)",
        "ci1_star_threshold": "(0, inf)",
        "ci2_star_threshold": "(0, inf)",
    },
}

# Parameters given as text that hold numbers (jwst's spellings): the form their text must have.
# "numbers N (0, inf)": N numbers in that range, "integers N [1, inf)" N integers in it;
# "fill value": a number, NAN or INDEF.
TEXT_FORMATS: dict[str, dict[str, str]] = {
    "outlier_detection": {
        "snr": "numbers 2 (0, inf)",
        "scale": "numbers 2 (0, inf)",
        "kernel_size": "integers 2 [1, inf)",
        "fillval": "fill value",
    },
    "resample": {"fillval": "fill value"},
}

# Parameters that must increase in the order given, when set ("<": strictly); jwst's
# source_catalog requires strictly increasing encircled energies.
ORDERED: dict[str, tuple[str, ...]] = {
    "tweakreg": ("sharplo <= sharphi", "roundlo <= roundhi"),
    "skymatch": ("lower < upper",),
    "source_catalog": (
        "sharplo <= sharphi",
        "roundlo <= roundhi",
        "aperture_ee1 < aperture_ee2 < aperture_ee3",
    ),
}
