/* placeholder: localtoken module, being written */
#include "localtoken.h"
