/* placeholder: hdr module, being written */
#include "hdr.h"
